"""A round: the wire contract, client duties, admission, scores, rewards, the coordinator shell.

messages (every client-coordinator key, encode/decode), participant (a client's ledger duties),
admission (pure: which replies are recorded, accepted or refused), scores (pure: the rule's, else
the scorer's, else the weights), contribution (Shapley and friends), coalitions (coalition models
and their cached utility), validation (the coordinator's validation scorer), rewards (integer
split), coordinator (the I/O shell over chain, model and pending block), recheck
(``verify --scores``), replica (a holder's own replay of every block it is shown, so it signs only
blocks it re-derived), replica_files (a deployed holder's replica on its disk).
"""
