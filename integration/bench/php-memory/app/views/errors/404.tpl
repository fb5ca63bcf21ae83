<!doctype html><title>Not found</title><h1>{{ $path }} was not found</h1>
