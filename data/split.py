"""The sender split of docs/EVALUATION.md: public / federated / valid / test."""
from hashlib import sha256

ROLES = ("public", "federated", "valid", "test")


def bucket_of(sender: str) -> int:
    """The sender's bucket, 0-99, from the first 8 bytes of sha256(sender)."""
    return int.from_bytes(sha256(sender.encode("utf-8")).digest()[:8], "big") % 100


def role_of(sender: str) -> str:
    """public (0-9), federated (10-79), valid (80-89) or test (90-99)."""
    bucket = bucket_of(sender)
    if bucket < 10:
        return "public"
    if bucket < 80:
        return "federated"
    if bucket < 90:
        return "valid"
    return "test"
