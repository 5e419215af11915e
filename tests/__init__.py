"""natvm's tests, one package so that every tier imports its helpers from ``tests.support``."""
