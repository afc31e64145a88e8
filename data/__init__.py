"""Datasets: the chitchat corpus split by sender, and plain text files of messages."""
from data.errors import DatasetError
from data.chitchat import Device, load_devices, load_split, typical_histories, CHITCHAT_PATH
from data.split import ROLES, role_of, bucket_of
from data.textfile import load_text_file

__all__ = ["DatasetError", "Device", "load_devices", "load_split", "typical_histories",
           "CHITCHAT_PATH", "ROLES", "role_of", "bucket_of", "load_text_file"]
