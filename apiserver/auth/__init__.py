"""Who is asking and may they (issue 23): TLS files (``pki``), authentication
(``authn``: client certificates, token file, ServiceAccount tokens from
``tokens``), authorization (``rbac`` and its default policy in ``policy``),
and what both see of a request (``attributes``)."""
