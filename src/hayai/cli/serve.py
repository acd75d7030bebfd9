"""`hayai serve`: the local server (A1111's API, hayai's job API, one persistent queue)."""

from __future__ import annotations

from typing import Optional

import typer

from hayai.cli.output import console, escape
from hayai.cli.request_options import RunFlags, run_flags


@run_flags(only=("vram", "strategy", "device", "threads"))
def serve(
    port: int = typer.Option(7860, "--port", help="Port \\[7860, as A1111]."),
    listen: bool = typer.Option(False, "--listen", help="Answer other machines too (binds 0.0.0.0); set --api-auth with it."),
    host: Optional[str] = typer.Option(None, "--host", help="Bind this address instead \\[127.0.0.1; 0.0.0.0 with --listen]."),
    api_auth: Optional[str] = typer.Option(None, "--api-auth", help="user:pass\\[,user2:pass2]: HTTP Basic auth on every route."),
    cors_allow: list[str] = typer.Option([], "--cors-allow", help="A web page origin allowed to call the server, e.g. http://localhost:3000 (repeat for more)."),
    allow_host: list[str] = typer.Option([], "--allow-host", help="Another Host name to answer when bound to localhost (repeat for more)."),
    max_body_mb: int = typer.Option(64, "--max-body-mb", help="Largest request body in MB \\[64]."),
    ui: bool = typer.Option(True, "--ui/--no-ui", help="The web UI at / (needs the \\[ui] extra: pip install 'hayai\\[ui]')."),
    resident_memory: Optional[str] = typer.Option(None, "--resident-memory", help="Host RAM the models kept loaded may take together, e.g. 16GB; 0 keeps one \\[half the free RAM at start]."),
    *, flags: RunFlags,
) -> None:
    """Serve AUTOMATIC1111's API and hayai's job API on http://127.0.0.1:7860 (docs at /docs)."""
    import importlib.util
    import logging

    import uvicorn

    from hayai.errors import RequestError
    from hayai.hardware import parse_size
    from hayai.server.app import create_app
    from hayai.server.security import parse_auth
    from hayai.server.state import ServerConfig, ServerState

    try:
        auth = tuple(parse_auth(api_auth))
    except ValueError as error:
        raise RequestError(str(error)) from None
    if max_body_mb < 1:
        raise RequestError(f"--max-body-mb {max_body_mb} must be at least 1")
    bind = host or ("0.0.0.0" if listen else "127.0.0.1")
    if ui and importlib.util.find_spec("gradio") is None:
        console.print("[yellow]note:[/] the web UI needs gradio (pip install 'hayai\\[ui]'); serving the APIs only")
        ui = False
    config = ServerConfig(host=bind, port=port, auth=auth, cors_allow=tuple(cors_allow), allow_hosts=tuple(allow_host),
                          max_body_bytes=max_body_mb * 1024 * 1024, ui=ui)
    resident = parse_size(resident_memory, "--resident-memory") if resident_memory is not None else None
    state = ServerState(config, engine=flags.engine(resident_bytes=resident))
    if not config.loopback and not auth:
        console.print("[yellow]warning:[/] listening beyond this machine without --api-auth: anyone who can reach "
                      f"port {port} can use it")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    shown = "127.0.0.1" if bind in ("0.0.0.0", "::") else bind
    console.print(escape(f"hayai serving on http://{shown}:{port} (A1111 API at /sdapi/v1, hayai API at /hayai/v1, "
                         f"{'web UI at /, ' if ui else ''}docs at /docs); Ctrl+C stops it, queued jobs wait for the next start"), soft_wrap=True)
    uvicorn.run(create_app(config, state), host=bind, port=port, log_level="warning", timeout_graceful_shutdown=10)
