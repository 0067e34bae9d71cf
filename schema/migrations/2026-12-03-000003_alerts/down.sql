DROP TABLE saga_alerts;
