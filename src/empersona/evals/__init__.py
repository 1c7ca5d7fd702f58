"""The evaluation battery: one inspect task per experiment, and the judges they share."""
