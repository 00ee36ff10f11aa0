from django.conf import settings
from django.contrib import admin
from django.urls import path

from core import views as core_views
from core.api import api
from event_log import views as event_log_views

urlpatterns = [
    path(settings.ADMIN_URL, admin.site.urls),
    path("api/", api.urls),
    path("health", event_log_views.health, name="health"),
    path("metrics", core_views.metrics, name="metrics"),
]
