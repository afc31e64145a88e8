"""What the device and the server share: the wire format, the privacy math, secure aggregation.

Both `keyboard_app` and `aggregation_server` import these modules; neither keeps a copy.
"""
