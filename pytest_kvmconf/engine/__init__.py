"""Run schedules against backends and judge them (schedule -> backend -> verdict)."""
