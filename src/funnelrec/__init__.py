"""funnelrec: the industrial recommendation funnel in one self-hostable package."""

__version__ = "0.1.0"
