"""Sphinx configuration: the Markdown pages in docs/ built with MyST-Parser and furo.

``make docs`` builds them with warnings as errors. autodoc imports ``django_tasks``, which
needs Django set up: the repository's test project, on an in-memory SQLite database.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
os.environ.setdefault("DATABASE_URL", "sqlite://:memory:")

import django  # noqa: E402

django.setup()

project = "django-kombu-tasks"
author = "The django-kombu-tasks authors"
copyright = "the django-kombu-tasks authors"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Every heading up to h6 gets a GitHub-style anchor, so the pages' [text](page.md#anchor)
# links resolve on the site as they do on GitHub.
myst_heading_anchors = 6
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"

html_theme = "furo"
html_title = "django-kombu-tasks"
