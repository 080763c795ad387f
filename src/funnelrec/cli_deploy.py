"""`funnelrec deploy nginx --replicas N`: the balancer's config for N serving replicas
(serving/deploy.py renders serving/nginx.conf.template). Registered on the main app by cli.py; a
bad setting is one `error: …` line and exit 2 (ConfigError)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    deploy = typer.Typer(no_args_is_help=True, help="Deployment files: a balancer in front of serving replicas.")
    app.add_typer(deploy, name="deploy")

    @deploy.command("nginx")
    def nginx_cmd(replicas: int = typer.Option(2, "--replicas", help="serving replicas behind nginx"),
                  base_port: int = typer.Option(8001, "--base-port", help="replica i listens on base-port + i"),
                  upstream_host: str = typer.Option("127.0.0.1", "--upstream-host", help="where the replicas run"),
                  listen: str = typer.Option("127.0.0.1:8000", "--listen", help="nginx's port or host:port"),
                  workers: int = typer.Option(1, "--nginx-workers", help="nginx worker processes"),
                  redis_url: str = typer.Option("redis://127.0.0.1:6379/0", "--redis-url",
                                                help="the replicas' shared state (named in the how-to-run comment)"),
                  artifact: str = typer.Option("artifacts/funnel", "--artifact", help="the served artifact (comment)"),
                  no_access_log: bool = typer.Option(False, "--no-access-log", help="access_log off"),
                  template: Path | None = typer.Option(None, "--template", help="another template "
                                                       "(default: the packaged serving/nginx.conf.template)"),
                  out: Path | None = typer.Option(None, "--out", help="write here (and logs/, tmp/ beside it) "
                                                  "instead of printing")) -> None:
        """Render nginx.conf: least_conn over the replicas, keep-alive upstreams, retries on the next
        replica for failed attempts (feedback made safe by its Idempotency-Key), an access log."""
        from funnelrec.serving.deploy import NginxLayout, render_nginx, write_nginx

        layout = NginxLayout(replicas=replicas, base_port=base_port, upstream_host=upstream_host, listen=listen,
                             worker_processes=workers, access_log=not no_access_log, redis_url=redis_url,
                             artifact=artifact)
        if out is None:
            typer.echo(render_nginx(layout, template=template), nl=False)
            return
        prefix = out.resolve().parent
        path = write_nginx(render_nginx(layout, prefix=prefix, conf=out.resolve(), template=template), out)
        typer.echo(f"wrote {path} ({replicas} replicas on {upstream_host}:{base_port}..{base_port + replicas - 1}); "
                   f"run: nginx -p {prefix} -e logs/error.log -c {path.resolve()}")
