module leftpad/go-v2

go 1.19
