"""The HTTP API: the Falcon app and one module per noun (its resources, schemas, routes and their
OpenAPI description, its SQL file named after it), tenancy and auth, middleware and the document
assembled from the nouns. Nothing imports this package; it reaches the engine only through
``tolstoy.engine``'s public names."""
