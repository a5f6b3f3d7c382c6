# The one image every carebus deployable runs from (see docker-compose.yml for the commands).

FROM python:3.11.14-slim@sha256:c8271b1f627d0068857dce5b53e14a9558603b527e46f1f901722f935b786a39 AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A few dependencies ship only as source distributions; the compiler stays in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Every dependency from the lock, each file checked against its hash; then carebus itself
# without resolving anything (requirements/base.lock includes its build tools). pip itself
# comes first, from requirements/pip.lock (requirements/pip.in says why).
COPY requirements/pip.lock requirements/base.lock requirements/
RUN pip install --require-hashes -r requirements/pip.lock \
    && pip install --require-hashes -r requirements/base.lock
COPY . .
RUN pip install --no-deps --no-build-isolation .


FROM python:3.11.14-slim@sha256:c8271b1f627d0068857dce5b53e14a9558603b527e46f1f901722f935b786a39

# carebus finds schemas/, infra/kafka/topics.yaml and the migrations relative to its package
# (config.PROJECT_ROOT), so the importable copy must be the one in /app, also for the `carebus`
# console script, which would otherwise import the installed copy from site-packages.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    CAREBUS_ENVIRONMENT=production \
    CAREBUS_STATE_DIR=/var/lib/carebus \
    CAREBUS_HTTP_HOST=0.0.0.0

RUN groupadd --system --gid 10001 carebus \
    && useradd --system --uid 10001 --gid carebus --home-dir /var/lib/carebus --no-create-home \
       --shell /usr/sbin/nologin carebus \
    && install -d -o carebus -g carebus -m 0750 /var/lib/carebus

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY . .

# Faust tables and other local state live in /var/lib/carebus; a named volume mounted there
# starts out owned by this user because the directory already is.
USER carebus:carebus

CMD ["carebus", "--help"]
