"""The operator web page (``linecam ui``): a read-only live view of the line, fed by the gate's PUB feed."""
