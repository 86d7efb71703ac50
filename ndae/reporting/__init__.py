"""What the reports share: their figures' sections and the self-contained `report.html`."""
