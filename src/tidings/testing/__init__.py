"""The shipped test kit: waiting until work is done (:func:`drain`), fakes that make tests
exact, and conformance suites (docs/testing.md).

Importable by users testing their own code and by tidings' own tests; nothing in ``src/``
imports it.
"""

from tidings.testing.contracts import STORE_CHECKS, TRANSPORT_CHECKS, check_store, check_transport
from tidings.testing.drain import drain
from tidings.testing.fakes import FakeClock

__all__ = ["STORE_CHECKS", "TRANSPORT_CHECKS", "FakeClock", "check_store", "check_transport",
           "drain"]
