from django.urls import path
from workflows import views

urlpatterns = [
    path("", views.runs, name="runs"),
    path("runs/<int:pk>", views.run_status, name="run-status"),
]
