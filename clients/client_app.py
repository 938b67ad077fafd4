"""The Flower ClientApp run by each data holder.

Placeholder until the simulation issue: it is importable (so ``[tool.flwr.app]`` resolves) and
answers a train message by echoing the arrays it was sent, with zero examples.
"""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    content = RecordDict(
        {"arrays": msg.content["arrays"], "metrics": MetricRecord({"num-examples": 0})}
    )
    return Message(content, reply_to=msg)
