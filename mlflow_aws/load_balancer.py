"""The central server's load balancer idle timeout: the one definition.

infra/tracking_service.py sets it on the ALB; the signing proxy (helper/proxy.py, ``serve
--remote``) waits on the server at least as long per socket operation. MLflow's proxied artifact
routes carry no bytes while the server moves a whole object to or from S3 (an upload is read
whole before S3 is written; a download is fetched before its first byte), so a large artifact
keeps a connection silent for minutes. A proxy that gave up sooner would fail requests the load
balancer still carries (a 2 GiB proxied download: 502 after the proxy's old 300 s).
"""

from __future__ import annotations

# 10 minutes covers a few GB each way through the server; the client's own
# MLFLOW_HTTP_REQUEST_TIMEOUT (120 s by default) may need raising for those.
IDLE_TIMEOUT_SECONDS = 600
