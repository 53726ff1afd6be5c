"""The HTTP API over stored results (Django REST framework); mount ``django_tasks.urls``."""
