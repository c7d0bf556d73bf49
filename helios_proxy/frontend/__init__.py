"""Client side: the listener, one session greenlet per client, authentication, TLS, cancel map."""
