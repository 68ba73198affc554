"""The gateway's endpoints, grouped by concern; each is a module-level function of a request,
importable and testable alone (``tidings.http.app`` holds the route table)."""
