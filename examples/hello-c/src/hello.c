#include <stdio.h>

int main(void) {
    printf("hello from runner\n");
    return 0;
}
