"""KubeRay manifests generated from medray's sources (``medray k8s render``); see :mod:`medray.k8s.render`."""

from medray.k8s.render import check_stale, render, render_all

__all__ = ["render", "render_all", "check_stale"]
