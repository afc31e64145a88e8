"""What the device and the server share: the protocol's messages and paths (`protocol`), the
wire format of updates (`wire`), the privacy math (`privacy`), device identity keys
(`identity`), secure aggregation (`secagg`).

Both `keyboard_app` and `aggregation_server` import these modules; neither keeps a copy.
"""
