from django.contrib import admin

from media.models import Stream


@admin.register(Stream)
class StreamAdmin(admin.ModelAdmin):
    """Streams are made and given keys with ``manage.py media_stream`` (the keys
    are shown once there); the admin lists them and can switch one off."""

    list_display = ("slug", "title", "active", "record", "max_viewers", "created_at")
    fields = ("slug", "title", "active", "record", "max_viewers")
    readonly_fields = ("slug",)

    def has_add_permission(self, request):
        return False
