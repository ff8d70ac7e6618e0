"""The streaming scorer: Kafka in, batched inference, Kafka out."""
