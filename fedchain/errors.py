"""The one error hierarchy of fedchain.

Every error a user can cause (bad input, wrong key, altered file, missing data) is a
:class:`FedchainError` whose message says what went wrong and, where it helps, what to do.
The CLI prints these as one line and exits non-zero; anything else escaping is a bug.
"""

from __future__ import annotations


class FedchainError(Exception):
    """Base class: a failure with a message a user can act on."""


class ConfigError(FedchainError):
    """A setting, flag or argument is invalid."""


class DataSourceError(FedchainError):
    """A data source cannot be found or read (missing files, unknown name, bad arrays)."""


class PartitionError(FedchainError):
    """A partitioner cannot split the data as asked (too few examples, bad parameters)."""


class DatasetFileError(FedchainError):
    """An encrypted dataset file cannot be opened: not ours, altered, truncated, or wrong key.

    The message always names the file. No partially decrypted data is ever returned.
    """

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class WrongKeyError(DatasetFileError):
    """The key or passphrase does not open this dataset file."""


class KeyFileError(FedchainError):
    """A key file (data key or identity key) is missing, unreadable, malformed or locked."""


class SignatureError(FedchainError):
    """A signature does not verify for the given key, domain and message."""


class LedgerError(FedchainError):
    """The ledger refuses an object, a block or a stored chain; the message says which check."""


class DecodeError(LedgerError):
    """Bytes are not the canonical encoding of a ledger object (truncated, trailing, bad tag)."""


class InvalidTransaction(LedgerError):
    """A transaction fails a ledger check (signature, round, binding, stake, replay, ...)."""


class InvalidBlock(LedgerError):
    """A block fails a ledger check (height, parent, proposer, signature, roots, or a tx in it)."""


class TrainingRefused(FedchainError):
    """A client declines to train in a round (it still does its ledger duties). ``code``: the
    ledger's reason code for it (:data:`fedchain.ledger.objects.REFUSAL_CODES`)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class PrivacyBudgetSpent(TrainingRefused):
    """A client has used every participation its federation's privacy budget allows."""


class UseNotAgreed(TrainingRefused):
    """A train message asks for more than the federation's contract allows: a round past its
    ``max_rounds``, or more local epochs than its ``max_local_epochs``."""


class UpdateNotAgreed(FedchainError):
    """What a holder's client was about to send is not what the contract says leaves it: other
    tensors than the genesis's model record lists, or more bytes than its update size."""


class LedgerStoreError(LedgerError):
    """The ledger store cannot be opened, read or appended to (missing, damaged, out of order)."""


class RegistryError(FedchainError):
    """A run's model files cannot be saved, found, read, or do not match their registered hash.

    The message names the file (or the model asked for) and what is wrong with it.
    """


class DeployError(FedchainError):
    """A Flower process would not start, died, never answered, or a ``flwr`` command failed.

    The message names the process or command and ends with the tail of its log or output.
    """


class AnchorError(FedchainError):
    """A ledger anchor cannot be published, or a receipt does not check out with its witness
    (wrong digest, wrong contract, untrusted timestamp authority, witness unreachable)."""
