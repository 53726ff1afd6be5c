from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="demo:progress"), name="home"),
    path("admin/", admin.site.urls),
    path("tasks/", include("django_tasks.urls")),
    path("demo/", include("testproject.demo.urls")),
]
