"""The shipped test kit: fakes that make tests exact, and conformance suites.

Importable by users testing their own code and by tidings' own tests; nothing in ``src/``
imports it.
"""

from tidings.testing.contracts import STORE_CHECKS, TRANSPORT_CHECKS, check_store, check_transport
from tidings.testing.fakes import FakeClock

__all__ = ["STORE_CHECKS", "TRANSPORT_CHECKS", "FakeClock", "check_store", "check_transport"]
