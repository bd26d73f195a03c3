"""MRI physics: FFTs, SENSE operators, sampling masks, coil sensitivities."""
