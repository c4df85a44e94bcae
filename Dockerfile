# The service image: `inbox serve`, `inbox work`, `inbox consume`, `inbox migrate` (see docker-compose.yml).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY inbox ./inbox
COPY sql ./sql
# Wheels for the service and every dependency; the runtime stage installs them without a compiler.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 inbox
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER inbox
WORKDIR /home/inbox
ENV PYTHONUNBUFFERED=1
EXPOSE 8080 9100
CMD ["inbox", "run"]
