# seqscore scorer/trainer image. Build: docker build -t seqscore .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what `pip install .` needs; see .dockerignore for what stays out of the context.
COPY pyproject.toml README.md ./
COPY consumer/ consumer/
COPY state/ state/
COPY training/ training/

RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 --user-group seqscore \
    && mkdir -p /models /data \
    && chown seqscore:seqscore /models /data

USER seqscore
EXPOSE 9464

ENTRYPOINT ["seqscore"]
CMD ["serve"]
