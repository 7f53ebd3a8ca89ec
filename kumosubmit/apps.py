from django.apps import AppConfig


class KumosubmitConfig(AppConfig):
    name = "kumosubmit"
    verbose_name = "kumosubmit"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the system checks and the settings-change receiver; no I/O.
        from kumosubmit import checks, conf  # noqa: F401
