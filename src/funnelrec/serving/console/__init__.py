"""The web console at /console (issue #13): server-rendered pages over the running service.

`console_router(admin_token, http, reports_dir)` is included by `serving.app.create_app`; the
pages are Jinja2 templates (templates/), htmx (static/htmx.min.js, vendored from the npm
package htmx.org, 0BSD licence in static/htmx.LICENSE) does the live parts, plots are SVG drawn
on the server (svg.py). What each page shows is assembled in views.py from the service's own
answers.
"""

from funnelrec.serving.console.router import console_router

__all__ = ["console_router"]
