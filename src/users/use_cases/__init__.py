from users.use_cases.create_user import CreateUser, CreateUserRequest, CreateUserResponse

__all__ = ["CreateUser", "CreateUserRequest", "CreateUserResponse"]
