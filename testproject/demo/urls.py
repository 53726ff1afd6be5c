from django.urls import path

from . import views

app_name = "demo"

urlpatterns = [
    path("", views.progress_page, name="progress"),
    path("start/", views.start, name="start"),
]
