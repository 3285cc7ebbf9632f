"""Face detection, landmarks, tracking, crop and paste back."""
