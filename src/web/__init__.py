"""The HTTP face of isochat: app factory, middleware, routes and error mapping."""
