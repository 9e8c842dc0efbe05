# A stand-in for the official python:3.11-slim base, from Debian's packages, for hosts that reach no image
# registry (`make test-compose`): `python` and `pip` on PATH, as there, from a virtual environment of Debian's
# Python 3.11, so the inspector image installs into it without touching the system's packages.
#
#   docker build -f deploy/docker/python.Dockerfile -t inspection-python:3.11 deploy/docker
#   docker build -f deploy/docker/Dockerfile --build-arg BASE_IMAGE=inspection-python:3.11 -t inspector .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/python

ENV PATH=/opt/python/bin:$PATH \
    LANG=C.UTF-8
