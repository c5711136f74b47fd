from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="Run",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
                ("testcase", models.CharField(max_length=20)),
                ("job_data", models.JSONField()),
                ("task_ids", models.JSONField(default=list)),
                ("start_id", models.CharField(blank=True, max_length=64)),
            ],
        ),
    ]
