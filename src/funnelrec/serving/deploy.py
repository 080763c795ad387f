"""Deployment files for replicas behind a balancer: `funnelrec deploy nginx --replicas N` renders
serving/nginx.conf.template (package data; the template says why each setting is there) for N
replicas of `funnelrec serve` on consecutive ports. deploy/nginx.conf in the repository is its
rendering for 2 replicas (a test keeps the two equal).

    conf = render_nginx(NginxLayout(replicas=2, base_port=8001, listen=8000), prefix="/srv/nginx")
    write_nginx(conf, "/srv/nginx/nginx.conf")       # + logs/ and tmp/ next to it
    # nginx -p /srv/nginx -e logs/error.log -c /srv/nginx/nginx.conf

The rendered file is a whole nginx.conf with relative paths (pid, logs, temp files), run with
`-p <prefix>` by any user: no root, no /etc/nginx. Placeholders are `{{name}}` (nginx's own
`$variables` stay as they are); a placeholder left unfilled or an unknown one is an error.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from funnelrec.core.errors import ConfigError

#: the template, shipped inside the package (it resolves after a plain pip install too)
NGINX_TEMPLATE = Path(__file__).resolve().parent / "nginx.conf.template"

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


@dataclass(frozen=True)
class NginxLayout:
    """N replicas at `upstream_host`:`base_port + i`; nginx listens on `listen` (a port, or
    host:port). `read_timeout_s` bounds one attempt at one replica, `retry_timeout_s` all
    attempts of one request; `fail_timeout_s` is how long a failed replica is skipped."""

    replicas: int = 2
    base_port: int = 8001
    upstream_host: str = "127.0.0.1"
    listen: str = "127.0.0.1:8000"
    worker_processes: int = 1
    read_timeout_s: float = 5.0
    retry_timeout_s: float = 10.0
    fail_timeout_s: float = 2.0
    max_body: str = "1m"  # the replicas' own limit (serving/app.py MAX_BODY_BYTES)
    access_log: bool = True
    redis_url: str = "redis://127.0.0.1:6379/0"  # printed in the replica commands
    artifact: str = "artifacts/funnel"

    def __post_init__(self) -> None:
        if not 1 <= self.replicas <= 1024:
            raise ConfigError(f"--replicas must be in [1, 1024], got {self.replicas}")
        if not 1 <= self.base_port <= 65535 - self.replicas + 1:
            raise ConfigError(f"--base-port {self.base_port}: ports {self.base_port}..{self.base_port + self.replicas - 1} "
                              "must lie in [1, 65535]")
        port = self.listen.rpartition(":")[2]
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"--listen must be a port or host:port, got {self.listen!r}")
        if str(port) in {str(p) for p in self.ports} and self.listen.rpartition(":")[0] in ("", self.upstream_host):
            raise ConfigError(f"--listen {self.listen} is also a replica's port ({self.base_port}..{self.ports[-1]})")
        if self.worker_processes < 1:
            raise ConfigError(f"worker_processes must be ≥ 1, got {self.worker_processes}")
        for name in ("read_timeout_s", "retry_timeout_s", "fail_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.fail_timeout_s != int(self.fail_timeout_s):  # nginx's upstream `server … fail_timeout=` parses seconds only
            raise ConfigError(f"fail_timeout_s must be a whole number of seconds (nginx's upstream fail_timeout "
                              f"takes no ms), got {self.fail_timeout_s}")

    @property
    def ports(self) -> list[int]:
        return [self.base_port + i for i in range(self.replicas)]

    @property
    def tries(self) -> int:
        """Attempts per request: every replica once, plus one (a replica that failed on a kept-alive
        connection is tried on a fresh one), at least 3."""
        return max(3, self.replicas + 1)


def _seconds(x: float) -> str:
    return f"{int(x * 1000)}ms" if x != int(x) else f"{int(x)}s"


def render_nginx(layout: NginxLayout, prefix: str | Path = ".", conf: str | Path = "nginx.conf",
                 template: str | Path | None = None) -> str:
    """The nginx.conf text for `layout` (`prefix`/`conf` only appear in the how-to-run comment)."""
    path = Path(template) if template is not None else NGINX_TEMPLATE
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"nginx template {path}: {e.strerror or e}") from None
    servers = "\n".join(f"        server {layout.upstream_host}:{p} max_fails=1 fail_timeout={_seconds(layout.fail_timeout_s)};"
                        for p in layout.ports)
    commands = "\n".join(
        f"#     funnelrec serve --artifact {shlex.quote(layout.artifact)} --port {p} "
        f"--state-dir state-{i} --redis-url {shlex.quote(layout.redis_url)}"
        for i, p in enumerate(layout.ports))
    commands += "\n#   (add --watch <served dir> to each to follow `funnelrec learn`; a token off loopback)"
    values = {
        "replicas": str(layout.replicas), "prefix": str(prefix), "conf": str(conf), "replica_commands": commands,
        "worker_processes": str(layout.worker_processes), "servers": servers, "listen": layout.listen,
        "access_log": "logs/access.log funnelrec buffer=32k flush=1s" if layout.access_log else "off",
        "max_body": layout.max_body, "read_timeout": _seconds(layout.read_timeout_s),
        "retry_timeout": _seconds(layout.retry_timeout_s), "fail_timeout": _seconds(layout.fail_timeout_s),
        "tries": str(layout.tries),
    }
    unknown = sorted(set(_PLACEHOLDER.findall(text)) - set(values))
    if unknown:
        raise ConfigError(f"nginx template {path}: unknown placeholders {', '.join(unknown)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def write_nginx(text: str, out: str | Path) -> Path:
    """Write the config and create the logs/ and tmp/ directories its relative paths name (next
    to it: run nginx with `-p` = that directory)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for d in ("logs", "tmp"):
        (out.parent / d).mkdir(exist_ok=True)
    out.write_text(text)
    return out
