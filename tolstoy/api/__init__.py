"""The HTTP API: the Falcon app, its resources (one module per model, named after
its SQL file), tenancy and auth, middleware, schemas and the OpenAPI document.
Nothing imports this package; it reaches the engine only through
``tolstoy.engine``'s public names."""
