module aegis.dev/tools/go-template

go 1.22
