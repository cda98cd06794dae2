#!/bin/sh
touch PWNED
