"""The HTTP API: ``path("tasks/", include("django_tasks.urls"))``."""

from django.urls import path

from .api import views
from .api.metrics import metrics
from .api.schema import schema_view

app_name = "django_tasks"

urlpatterns = [
    path("", views.TaskResultList.as_view(), name="task-list"),
    path("schema/", schema_view(), name="schema"),
    path("metrics", metrics, name="metrics"),
    path("<str:task_id>/", views.TaskResultDetail.as_view(), name="task-detail"),
    path("<str:task_id>/revoke/", views.TaskResultRevoke.as_view(), name="task-revoke"),
]
