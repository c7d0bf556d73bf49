"""The admin REST API: a Flask app (app.py) with one blueprint per resource, served by gevent's
WSGI server inside the proxy process (server.py)."""
