"""The inbox: alerts for coordinators and privacy officers, over HTTP, live, and as a web page."""
