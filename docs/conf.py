"""Sphinx configuration: the guide pages and an API reference generated from the docstrings."""

project = "distcomm"
author = "distcomm developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
exclude_patterns = ["_build", "performance.rst"]
html_theme = "alabaster"
suppress_warnings = ["ref.python"]  # several modules name the same class in prose; not an error
