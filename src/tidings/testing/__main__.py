"""``python -m tidings.testing``: print the capability table of every transport."""

from tidings.testing.capabilities import capability_table

print(capability_table())
