"""The HTTP side: marketplace webhooks in, the admin API, health, metrics, the OpenAPI document, the server."""
